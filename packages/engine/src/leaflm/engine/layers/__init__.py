"""Building blocks of leaflm models: thin modules over `leaflm.kernels` ops."""
