"""The example experiments, shipped inside the package as `csmoe_megatron.configs`.

This file only makes the folder a package, so that installs (wheel and editable) can find the
YAML files: `csmoe-train --config cpu_tiny` and `csmoe-train --list-configs` read them from there.
"""
