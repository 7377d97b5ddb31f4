"""The paper recipes as YAML files, shipped with the package: ``--config cifar10`` names one, ``spikingformer recipes`` lists them."""
