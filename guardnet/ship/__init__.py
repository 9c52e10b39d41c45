"""Write the folders guardnet ships (``guardnet ship ...``).

- :func:`ship_contranet`: a trained ContraNet's Hub folder with its measured detection figures
  (config metrics and a model-card section) from :func:`guardnet.eval.measure.measure_contranet`;
- :func:`convert_akamaster`: Yerlan Idelbayev's CIFAR-10 ResNet20 / ResNet56 checkpoints as
  Hub folders;
- :func:`write_fixtures`: the small dataset samples in ``guardnet/assets/fixtures/``.
"""

from guardnet.ship.akamaster import convert_akamaster, load_akamaster
from guardnet.ship.contranet import ship_contranet
from guardnet.ship.fixtures import write_fixtures

__all__ = ["convert_akamaster", "load_akamaster", "ship_contranet", "write_fixtures"]
