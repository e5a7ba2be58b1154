"""Constants shared by the gateway tests and their conftest (a unique module name, since
all packages' tests run in one pytest process)."""

API_KEY = "test-key"
MODEL_NAME = "tiny-llama"
