"""Robot datasets without TensorFlow: episodes, RLDS/TFDS and LeRobot formats, action chunking, norm stats, loading.

* :mod:`~pi0_eqm.data.episodes` -- ``Episode`` and the ``EpisodeSource`` reader protocol.
* :mod:`~pi0_eqm.data.rlds` -- RLDS datasets in TFDS format (array_record writer; array_record and TFRecord readers).
* :mod:`~pi0_eqm.data.tfrecord` -- TFRecord framing and CRC32C without TensorFlow.
* :mod:`~pi0_eqm.data.lerobot` -- local LeRobot v2.0/v2.1 datasets (parquet images or mp4 videos).
* :mod:`~pi0_eqm.data.chunking` -- frames -> samples with action chunks and padding masks.
* :mod:`~pi0_eqm.data.normalize` -- openpi ``norm_stats.json`` and z-score / quantile normalization.
* :mod:`~pi0_eqm.data.loader` -- deterministic, resumable, multi-host grain data loader.

Submodules are imported explicitly (``from pi0_eqm.data.rlds import RldsDataset``) so that importing one format does
not pull in the others' dependencies (tensorflow_datasets takes about a second to import).
"""
