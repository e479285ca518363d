"""Sparse autoencoders: training from activation stores (sae-lens classes, sae-lens format),
loading (directories and the sae-lens registry), and quality metrics; and a BatchTopK
crosscoder for diffing a base and a finetuned model (``sae.crosscoder``)."""

from persona_probe.sae.config import (SAE_ARCHITECTURES, SAEArchitecture, SAEConfigError,
                                      SAETrainConfig, build_training_sae,
                                      register_sae_architecture)
from persona_probe.sae.crosscoder import (Crosscoder, CrosscoderConfig, CrosscoderConfigError,
                                          CrosscoderError, CrosscoderLoadError, load_crosscoder,
                                          paired_latent_ablation, save_crosscoder,
                                          train_crosscoder)
from persona_probe.sae.io import SAELoadError, SAEMismatchError, check_compatible, load_sae
from persona_probe.sae.metrics import evaluate_sae, format_metrics, subject_of_sae
from persona_probe.sae.train import SAETrainingError, train_sae

__all__ = ["Crosscoder", "CrosscoderConfig", "CrosscoderConfigError", "CrosscoderError",
           "CrosscoderLoadError", "SAEArchitecture", "SAEConfigError", "SAELoadError",
           "SAEMismatchError", "SAETrainConfig", "SAETrainingError", "SAE_ARCHITECTURES",
           "build_training_sae", "check_compatible", "evaluate_sae", "format_metrics",
           "load_crosscoder", "load_sae", "paired_latent_ablation", "register_sae_architecture",
           "save_crosscoder", "train_crosscoder", "train_sae", "subject_of_sae"]
