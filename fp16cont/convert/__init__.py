"""Stage 1, convert: read a float32 model, choose 16-bit policies, quantize, rebuild, verify, export."""
