"""The RVQ codec: the model (model), its quantizer (quantize), encoder/decoder pairs (seanet, spectral),
the discriminator and the reconstruction losses (discriminator, losses)."""
