"""Training settings of the zoo's models, used when a run config does not set them.

Each is a partial recipe (see :mod:`sgcnn.models.registry`): ``sgcnn train --model NAME`` with
no other option trains on the model's own dataset at a learning rate it converges with, and any
recipe key or ``--set`` option overrides it.
"""

# LeNet-5 has no BatchNorm: SGD at 0.1 diverges within its first epoch on MNIST; 0.02 trains
# with a margin (weight decay 5e-4 as in Caffe's LeNet recipe).
MNIST = {
    "data": {"name": "mnist5k"},
    "optim": {"lr": 0.02, "schedule": "cosine", "weight_decay": 5e-4},
}

# The CIFAR models have BatchNorm: the usual SGD at 0.1, with a cosine decay over the run.
CIFAR = {
    "data": {"name": "cifar10"},
    "optim": {"lr": 0.1, "schedule": "cosine"},
}

# The tiny test models train on synthetic 16x16 images: nothing to download.
SYNTHETIC = {
    "data": {"name": "synthetic", "image_size": 16},
    "optim": {"lr": 0.05, "schedule": "cosine"},
}

# AlexNet and the VGGs without BatchNorm diverge at 0.1 too (torchvision's training references
# train them at 0.01).
NO_BATCHNORM = {"optim": {"lr": 0.01}}
