"""Networks shared by pre-training and transfer: encoders (backbones) and the U-Net decoder."""
