"""Training as one object (run.py: TrainingRun, built whole from a config.py TrainConfig) and its parts:
where the process computes (placement.py), the loaders (run_data.py), the model, optimizer and step
(learner.py, step.py, optimizer.py), where the run stands and its checkpoints (run_state.py, state.py,
checkpoint_schedule.py), what it tells its user (run_report.py, run_log.py: log.jsonl + TensorBoard), the
epoch loop (epoch.py) and the recipe of epochs, batch, lr and milestones (recipe.py).

Import the module you need (ssdfast.training.step, ...): this package imports nothing by itself, so
a benchmark of the step does not load the data pipeline or the evaluation.
"""
