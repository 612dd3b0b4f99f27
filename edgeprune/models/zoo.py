"""The built-in zoo: CIFAR-style forms of the architectures the pruning papers use, plus the
small demo network, each for any number of input channels and classes."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import mobilenet_v2 as tv_mobilenet_v2

from edgeprune.models.registry import register_model


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


@register_model("democnn")
def democnn(in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    """The demo classifier: a VGG-style 6-conv network sized for 28x28 Fashion-MNIST."""
    widths = [(in_channels, 32), (32, 32), "M", (32, 64), (64, 64), "M", (64, 128), (128, 128)]
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.MaxPool2d(2)] if w == "M" else conv_bn_relu(*w)
    return nn.Sequential(
        *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
        nn.Linear(128, num_classes),
    )


VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
             512, 512, 512, "M"]


@register_model("vgg16_bn")
def vgg16_bn(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """VGG-16 with BatchNorm in its CIFAR form (one linear classifier on 512 features).

    Max-pools use ceil_mode so 28x28 inputs survive all five pools."""
    layers: list[nn.Module] = []
    cin = in_channels
    for v in VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        else:
            layers += conv_bn_relu(cin, v)
            cin = v
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(512, num_classes))


class BasicBlock(nn.Module):
    """ResNet basic block; the shortcut is a 1x1 conv + BN when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images (He et al. 2016, section 4.2): 16-32-64 channels."""

    def __init__(self, depth: int, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError("CIFAR ResNet depth must be 6n+2")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        stages, cin = [], 16
        for i, cout in enumerate((16, 32, 64)):
            for j in range(n):
                stages.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


@register_model("resnet20")
def resnet20(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    return CifarResNet(20, in_channels, num_classes)


@register_model("resnet32")
def resnet32(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    return CifarResNet(32, in_channels, num_classes)


@register_model("resnet56")
def resnet56(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    return CifarResNet(56, in_channels, num_classes)


CIFAR_MOBILENETV2_SETTING = [[1, 16, 1, 1], [6, 24, 2, 1], [6, 32, 3, 2], [6, 64, 4, 2],
                             [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]


@register_model("mobilenetv2")
def mobilenetv2(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """MobileNetV2 for small images: stride-1 stem and the CIFAR stride schedule."""
    model = tv_mobilenet_v2(num_classes=num_classes,
                            inverted_residual_setting=CIFAR_MOBILENETV2_SETTING)
    model.features[0][0] = nn.Conv2d(in_channels, 32, 3, 1, 1, bias=False)
    return model
