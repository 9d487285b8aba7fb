"""fedshield: secure cross-silo federated learning.

The supported entry points are the ``fedshield`` command line (see ``fedshield --help``)
and the modules below: :mod:`fedshield.config` (federation files),
:mod:`fedshield.federation` (rounds, simulation, participants), :mod:`fedshield.identity`
(federation PKI), :mod:`fedshield.storage` (model registry) and
:mod:`fedshield.training` (tasks and local training).
"""

from fedshield.config import FederationConfig, load_config
from fedshield.errors import FedshieldError

__all__ = ["FederationConfig", "FedshieldError", "__version__", "load_config"]

__version__ = "0.1.0"
