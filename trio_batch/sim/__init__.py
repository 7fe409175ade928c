"""A policy simulator: the real batcher, a synthetic load, Trio's virtual time.

"What will this policy do to my latency and throughput under *my* load?"
Describe the load as a :class:`Scenario` (or a TOML file), and
:func:`run_scenario` pushes it through a real :func:`trio_batch.open_batcher`
for each policy, in virtual time, so simulated seconds cost only the CPU their
events need (tens of microseconds per item) and the same seed always gives the
same numbers.

From the command line::

    python -m trio_batch.sim                      # the default scenario, every policy
    python -m trio_batch.sim --scenario web-db --plot plots/
    python -m trio_batch.sim --list

From Python::

    from trio_batch.sim import load_scenario, run_scenario

    result = run_scenario(load_scenario("burst", ["arrivals.rate=800"]))
    for policy in result.results:
        print(policy.policy, policy.latency(99), policy.throughput)

Plotting needs matplotlib, and the progress bar tqdm (``pip install
'trio_batch[sim]'``); nothing here imports them until they are used.
"""

from ._loading import (
    ScenarioError as ScenarioError,
    builtin_scenarios as builtin_scenarios,
    load_scenario as load_scenario,
)
from ._plot import PLOT_FILES as PLOT_FILES, write_plots as write_plots
from ._results import (
    PolicyResult as PolicyResult,
    Sample as Sample,
    SimulationResult as SimulationResult,
)
from ._run import (
    SimulatedFailure as SimulatedFailure,
    run_scenario as run_scenario,
    simulate_policy as simulate_policy,
)
from ._scenario import (
    Arrivals as Arrivals,
    Burst as Burst,
    ItemCosts as ItemCosts,
    KeyDistribution as KeyDistribution,
    Pool as Pool,
    ProcessModel as ProcessModel,
    Scenario as Scenario,
    Timeouts as Timeouts,
    parse_policy as parse_policy,
    policy_label as policy_label,
)
from ._workload import Workload as Workload, generate_workload as generate_workload

__all__ = [
    "PLOT_FILES",
    "Arrivals",
    "Burst",
    "ItemCosts",
    "KeyDistribution",
    "PolicyResult",
    "Pool",
    "ProcessModel",
    "Sample",
    "Scenario",
    "ScenarioError",
    "SimulatedFailure",
    "SimulationResult",
    "Timeouts",
    "Workload",
    "builtin_scenarios",
    "generate_workload",
    "load_scenario",
    "parse_policy",
    "policy_label",
    "run_scenario",
    "simulate_policy",
    "write_plots",
]
