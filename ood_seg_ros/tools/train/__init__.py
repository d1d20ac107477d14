"""Training loops: base DeepLabv3+, MOoSe probes, entropy maximisation."""
