"""dsaml_utils: the library behind the DSAML workbook, one subpackage per stage of the pipeline.

Read it in this order; each stage imports only the stages above it (tests/test_layout.py checks this):

    errors, metrics, seeding   shared by every stage: error types, CCC/PCC/RMSE and the loss, random streams
    io/          atomic writes, checkpoints, provenance (digests, code version)
    data/        the dataset model (songs, listeners' curves), DEAM and PMEmo loaders, the synthetic dataset
    features/    audio decoding, log-mel, Kaldi fbank, the feature cache, song tensors, windows and batches
    encoders/    frozen global encoders (ImageBind, musicnn, vibenet) and their embeddings
    models/      DSAML, the baselines, shared layers, whole-song prediction
    meta/        MAML: the inner loop, the reference task loop, the batched (vmap) path, one listener
    training/    run configuration and presets, sampling, the trainer, run folders
    evaluation/  the DMER and PDMER protocols, metrics.json, reports, curve files
    plots/       every figure and table, stamped with its provenance
    experiments/ the paper's tables over seeds, personalizing from files, the bench
    workbook/    the notebook runner (papermill) and the notebooks' Session
    cli/         the `dsaml` command (all argument parsing)
"""

__version__ = "0.1.0"
