"""Serving: export a trained checkpoint to ONNX + FAISS, serve it on Triton, and call it.

python -m serving.export ckpt_path=<run>/checkpoints/best.ckpt               # -> an export bundle
python -m serving.repository --export <bundle> --out <model_repository>      # -> Triton repository
python -m serving.server --repository <model_repository>                     # real tritonserver, 127.0.0.1
python -m serving.client recommend --items i1,i2 --device-type mobile        # a request
"""
