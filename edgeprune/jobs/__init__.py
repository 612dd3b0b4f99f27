"""Jobs: one function per command, names and paths in, run folders and files out.

This is the only layer that loads a model or a dataset by reference (`loading`); it hands
modules, tensors and batches to the stages (`criteria`, `pruning`, `training`, `export`,
`devices`, `report`) and writes what they return.

| command | job |
|---|---|
| compress | `compress.compress` (stages: `compress_model`, `compress_files`; decisions:
  `policy`; options: `config.CompressConfig`; run folder: `runs.RunFolder`; candidate files
  and the choice: `candidates`; RUN/ship/: `ship`) |
| sweep | `sweep.run_sweep` |
| train | `train.train_model` |
| prune | `prune.prune_file` |
| export | `export.export_files` |
| bench | `bench.bench_command` |
| deploy | `deploy.deploy_run` |
| targets calibrate | `calibrate.calibrate_target` |
| report | `report.report_run` |
| score | `score.score_model` |
| explain | `explain.explain_model` |
"""
