"""
Start-up and per-frame checks of the node that need no ROS objects.

Kept apart from :mod:`ood_seg_ros.ros.node` so they are testable without a ROS graph.
"""

from typing import Iterable, List

# Parameters rclpy itself declares or reads: never reported as unknown.
ROS_PARAMETERS = ('use_sim_time', 'start_type_description_service')
ROS_PARAMETER_PREFIXES = ('qos_overrides.',)
MIN_DIAGNOSTICS_PERIOD = 0.1        # s: at most 10 messages/s on /diagnostics
MAX_DIAGNOSTICS_PERIOD = 3600.0


def unknown_parameters(given: Iterable[str], known: Iterable[str]) -> List[str]:
    """
    Names given on the command line or in a params file that the node does not declare.

    rclpy silently ignores overrides of undeclared parameters, so a misspelt name
    (``segment_threshhold``) would leave the node on its default; the node refuses them.
    """
    known = set(known) | set(ROS_PARAMETERS)
    return sorted(n for n in given
                  if n not in known and not n.startswith(ROS_PARAMETER_PREFIXES))


_KINDS = {'string': (str,), 'bool': (bool,), 'int': (int,), 'float': (float, int)}


def command_line_parameter_problems(argv, parameters: dict) -> List[str]:
    """
    Check every ``-p name:=value`` in the ``--ros-args`` parts of ``argv``.

    ``parameters`` maps name -> (default, kind, ...) with kind string, bool, int or float.
    rcl drops a ``-p`` value whose YAML type differs from the same key in a
    ``--params-file`` (``-p segment_threshold:=abc`` left the file's 0.0 in place), so
    the node checks the command line itself. Returns one message per bad entry.
    """
    import yaml
    problems = []
    in_ros, i, args = False, 0, list(argv or ())
    while i < len(args):
        arg = args[i]
        if arg == '--ros-args':
            in_ros = True
        elif arg == '--':
            in_ros = False
        elif in_ros and arg in ('-p', '--param') and i + 1 < len(args):
            i += 1
            name, sep, text = args[i].partition(':=')
            if not sep:
                problems.append(f'-p {args[i]!r} is not name:=value')
            elif name not in parameters:
                if unknown_parameters([name], ()):
                    problems.append(f'unknown parameter {name!r} (misspelt?)')
            else:
                kind = parameters[name][1]
                try:
                    value = yaml.safe_load(text)
                except yaml.YAMLError:
                    value = text
                if value is None and kind == 'string':
                    value = ''                      # -p engine_path:= (empty)
                if isinstance(value, str) and kind == 'float':
                    value = _number(text, float)   # rcl reads 1e-6 as a double
                ok = isinstance(value, _KINDS[kind]) and not (
                    kind in ('int', 'float') and isinstance(value, bool))
                if not ok:
                    article = 'an' if kind == 'int' else 'a'
                    problems.append(f'parameter {name}: {text!r} is not {article} {kind}')
        i += 1
    return problems


def _number(text: str, kind):
    try:
        return kind(text)
    except ValueError:
        return text
