"""Causal language models: GGUF -> ONNX conversion, tokenizer, and the in-process generation engine.

Modules (nothing heavy is imported at package import time):

- ``gguf_source``   read a llama-family GGUF (config, dequantized weights, vocabulary), with clear errors
- ``tokenizer``     build a ``tokenizers`` Tokenizer from the GGUF vocabulary; ChatML template; streaming decode
- ``graph``         write the ONNX decoder (KV cache) with onnx.helper; weight-only quantized variants
- ``reference``     an independent numpy forward pass used to cross-check the ONNX graph
- ``sampling``      generation parameters and the token sampler
- ``prefix_cache``  byte-bounded LRU of KV states of shared prompt prefixes
- ``engine``        ``LLMEngine``: prefill + decode loop on onnxruntime, streaming ``TokenEvent``s
- ``evaluate``      perplexity, top-1 agreement, time to first token, decode tokens/s, peak RSS
"""
