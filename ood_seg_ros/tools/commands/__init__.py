"""
Subcommands of the ``ood-seg`` CLI: one :class:`.base.Command` class each.

A command parses its options and calls the engine (in the package, not here). Adding one
is a module with its class plus one line in ``COMMANDS``.
"""

from .bag_eval import BagEvalCommand
from .bench import BenchCommand
from .evaluate import EvalCommand
from .export import ExportCommand
from .fleet_eval import FleetEvalCommand
from .make_bag import MakeBagCommand
from .make_ood_set import MakeOodSetCommand
from .recipe import RecipeCommand
from .sml_stats import SmlStatsCommand
from .train import TrainBaseCommand, TrainEntropyCommand, TrainProbesCommand
from .train_meta import TrainMetaCommand

COMMANDS = (BenchCommand, TrainBaseCommand, TrainProbesCommand, TrainEntropyCommand,
            TrainMetaCommand, SmlStatsCommand, EvalCommand, ExportCommand, MakeOodSetCommand,
            MakeBagCommand, BagEvalCommand, FleetEvalCommand, RecipeCommand)
