"""lookalike into FiftyOne: ``lookalike plugin install`` (the App plugin's files) and
``register-backend`` (fiftyone-brain's similarity backend). Neither needs the database."""

import os
import sys


def add_commands(sub):
    """The group's commands, in the order of `lookalike --help`."""
    _add_plugin(sub)
    _add_register_backend(sub)


def _add_plugin(sub):
    plugin = sub.add_parser("plugin", help="put the FiftyOne plugin (only its files) into "
                                           "a plugins directory")
    plugin_sub = plugin.add_subparsers(dest="plugin_command", required=True)
    pinst = plugin_sub.add_parser("install", help="write <dir>/lookalike/")
    pinst.add_argument("--dir", default=None,
                       help="plugins directory (default: FiftyOne's plugins_dir, "
                            "FIFTYONE_PLUGINS_DIR)")
    pinst.set_defaults(func=cmd_plugin_install, needs_database=False)


def cmd_plugin_install(args):
    from lookalike.app.plugin_install import install

    if args.dir is None:
        import fiftyone as fo

        args.dir = fo.config.plugins_dir
    target = install(args.dir)
    print(f"installed the @lookalike/similarity plugin in {target}")
    print(f"  use it with: FIFTYONE_PLUGINS_DIR={os.path.dirname(target)} fiftyone app launch")
    return 0


def _add_register_backend(sub):
    reg = sub.add_parser("register-backend",
                         help="add backend='lookalike' to fiftyone-brain's brain config file")
    reg.add_argument("--config", default=None,
                     help="brain config file (default: FIFTYONE_BRAIN_CONFIG_PATH or "
                          "~/.fiftyone/brain_config.json)")
    reg.set_defaults(func=cmd_register_backend, needs_database=False)


def cmd_register_backend(args):
    from lookalike.similarity.registration import env_hides_backend, write_brain_config

    path, changed = write_brain_config(args.config)
    print(f"{'registered' if changed else 'already registered'}: fiftyone-brain similarity "
          f"backend 'lookalike' in {path}")
    hidden = env_hides_backend()
    if hidden:
        print(f"warning: {hidden}", file=sys.stderr)
    return 0
