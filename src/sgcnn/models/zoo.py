"""The model zoo: importing this module registers every model.

- ``lenet5`` (MNIST), ``resnet20/32/56/110``, ``densenet121_cifar``, ``vgg16_cifar`` (CIFAR);
- tiny ``test_resnet``, ``test_densenet``, ``test_vgg``, ``test_convnet`` for unit tests;
- every torchvision classification model under its torchvision name (``source="torchvision"``).

Zoo and torchvision names never collide: registering a name twice raises ``ValueError``.
"""

from sgcnn.models import (  # noqa: F401  (imported for their registrations)
    cifar_resnet,
    densenet_cifar,
    lenet,
    tiny,
    torchvision_models,
    vgg_cifar,
)
