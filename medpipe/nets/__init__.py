"""Networks: MONAI networks by name (``basic_unet``, ``dyn_unet``, ...), and medpipe's own (``lenet``)."""

from medpipe.nets.factory import NETS, build_net

__all__ = ["NETS", "build_net"]
