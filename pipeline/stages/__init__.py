"""The DVC stages, one thin module each, named as in dvc.yaml."""
