"""Migration from other tools: ``hacontrol import-keepalived`` turns keepalived.conf into a config.

Modules: ``keepalived_source`` (files, comments, ``@host`` lines, ``$MACRO``s, includes via
``keepalived_glob``: the logical lines keepalived's own reader would see, each with its file and
line), ``keepalived_parse`` (those lines as a tree of keyword nodes and ``{}`` blocks),
``keepalived_convert`` (virtual servers -> services), ``keepalived_checks`` (checkers -> the
service's check), ``keepalived_vrrp`` (VRRP instances and sync groups -> ``ha:``),
``keepalived_values`` (values checked, errors collected), ``yaml_out`` (a small emitter that keeps
order and writes a comment for everything that could not be carried over), ``command`` (the CLI
entry point). Nothing here touches the network or the kernel: the input files are the only I/O,
the output is YAML text. See docs/migrate-from-keepalived.md.
"""
