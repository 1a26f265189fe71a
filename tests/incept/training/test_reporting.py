"""TensorBoard summaries through tf.summary (the pinned tensorboard package):
TensorBoard's own reader finds the scalars and images under their plugins."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from incept.training.reporting import write_images, write_scalar


def test_scalars_and_images_read_back_by_tensorboard(tmp_path):
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default():
        write_scalar("loss", 0.25, 3)
        write_scalar("loss", 0.125, 4)
        write_images("inputs", np.full((2, 8, 6, 3), 0.5, np.float32), 0)
    writer.close()

    events = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    events.Reload()
    assert events.SummaryMetadata("loss").plugin_data.plugin_name == "scalars"
    assert [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in events.Tensors("loss")] == [
        (3, 0.25), (4, 0.125)]
    assert events.SummaryMetadata("inputs").plugin_data.plugin_name == "images"
    width, height, *pngs = tf.make_ndarray(events.Tensors("inputs")[0].tensor_proto)
    assert (int(width), int(height), len(pngs)) == (6, 8, 2)
    assert tf.io.decode_png(pngs[0]).shape == (8, 6, 3)
