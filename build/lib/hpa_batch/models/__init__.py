"""Stage 3 (workflow/rules/models.smk): model factory and the studies' architectures, folds, loader, schedules, transforms, losses, checkpoints, training, inference."""
