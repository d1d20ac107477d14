"""
The offline tools: everything ``ood-seg`` runs and the robot does not.

Training, datasets, evaluation and calibration, metrics, the bench, bag tools, the fleet
evaluation, the recipe and the model card. The node's world (the rest of the package)
never imports from here; ``test/unit/test_imports.py`` enforces that line.
"""
