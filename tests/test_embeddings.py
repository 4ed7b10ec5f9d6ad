"""The CNN embedding: GaussianBlob images train through MF-NPE and checkpoints rebuild the CNN."""

import torch

from mfsbi.inference import EstimatorConfig, TrainingConfig, estimator_from_bytes, estimator_to_bytes, fine_tune, train_npe
from mfsbi.inference.embeddings import ImageEmbedding
from mfsbi.simulators.gaussian_blob import gaussian_blob


def test_the_cnn_embeds_images_of_any_size():
    for size in (16, 64, 256):
        assert ImageEmbedding((size, size))(torch.zeros(3, size * size)).shape == (3, 32)


def test_gaussian_blob_mf_npe_with_a_cnn_trains_and_round_trips():
    task = gaussian_blob(image_size=32, lf_size=8)
    estimator = EstimatorConfig(embedding="cnn", x_shape=task.x_shape, z_score_x="structured",
                                hidden_features=20, num_transforms=2)
    theta_lf = task.sample_prior(300, seed=0)
    pretrained = train_npe(task.prior, theta_lf, task.low_fidelity(theta_lf, seed=1), estimator=estimator,
                           training=TrainingConfig(max_num_epochs=15, seed=0))
    losses = pretrained.validation_losses
    assert losses[-1] < losses[0]  # the CNN learns something
    theta_hf = task.sample_prior(40, seed=2)
    tuned = fine_tune(pretrained, theta_hf, task.high_fidelity(theta_hf, seed=3),
                      training=TrainingConfig(max_num_epochs=3, seed=0))
    restored = estimator_from_bytes(estimator_to_bytes(tuned), task.prior)
    assert isinstance(restored.network._embedding_net[1], ImageEmbedding)
    x_o = torch.as_tensor(task.high_fidelity(theta_hf[:1], seed=4), dtype=torch.float32)
    theta = torch.as_tensor(theta_hf[:5], dtype=torch.float32)
    a = tuned.posterior().log_prob(theta, x=x_o)
    b = restored.posterior().log_prob(theta, x=x_o)
    assert torch.allclose(a, b)
