"""twistd plugin: ``twistd -n fanout --help``."""

from twisted.application.service import ServiceMaker

fanout = ServiceMaker(
    "txfanout",
    "txfanout.tap",
    "Scatter-gather HTTP gateway: one POST in, 1..8 partner calls out.",
    "fanout",
)
