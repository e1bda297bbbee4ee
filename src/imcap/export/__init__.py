"""Portable model export: a folder of safetensors weights, JSON config and vocabulary (and ONNX graphs).

    folder.py          the folder format: write it atomically, read it back without pickle
    card.py            the folder's README.md, a model card
    onnx_graphs.py     the encoder and one decoder step as ONNX graphs (`imcap export --onnx`)
    onnx_captioner.py  greedy captions over onnxruntime from those graphs (OnnxCaptioner)
    options.py         the options of `imcap export`
    command.py         `imcap export` itself: a run, checkpoint or export -> an export folder
"""
