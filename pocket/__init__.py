"""The pocket world: a miniature Stable Diffusion that trains on a 2-core CPU (toy_sd.py), the evaluator that
judges its images (evaluator.py) and the pinned assets every machine starts from (pinned.py).

The method reaches it only at its default paths: pipeline.load_pipeline("runs/base") restores the pinned base,
evaluate.py and real_eval.py use its evaluator, perceptual.py its CLIP. It imports the method's helpers
(config, data, losses, pipeline), never the lab.
"""
