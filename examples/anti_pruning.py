"""Anti-pruning: how strong must a penalty be to keep the PING loop when it trains?

Two penalties (bridge.regularisers): the stored W_EI's distance from
canonical, and a shortfall of E gamma-band power; each at lambda 0.1-1000.
The figure ``figures/anti_pruning.png`` draws loop survival and accuracy
against lambda. The no-penalty control and one lambda of each by default:

    python examples/anti_pruning.py --out results/anti_pruning_example
    biosim protocol run anti_pruning                   # every lambda (survey tier)
"""

from _follow_up import parser, run

DEFAULT = ["anti_pruning_off", "anti_pruning_reg_w_ei_distance_10", "anti_pruning_reg_gamma_power_10"]

if __name__ == "__main__":
    run("anti_pruning", parser(__doc__, DEFAULT).parse_args())
