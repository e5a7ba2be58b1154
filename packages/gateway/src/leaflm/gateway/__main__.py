"""`python -m leaflm.gateway [MODEL] [options]`: the same as `leaflm serve`."""

from leaflm.gateway.cli import main

raise SystemExit(main())
