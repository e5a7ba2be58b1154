"""Constants shared by the client tests and their conftest (a unique module name, since
all packages' tests run in one pytest process)."""

API_KEY = "client-key"
MODEL_NAME = "tiny-client"
