"""tau_GABA x trainability: does the GABA decay time decide what training does to the loop?

tau_GABA of 4, 6, 8, 12 and 16 ms, each with the loop frozen and trainable;
``figures/tau_gaba.png`` draws the gamma peak, I rate, W_EI pruning and
accuracy against tau_GABA. (``tau_gaba_sweep.py`` shows the untrained
network's gamma peak alone.) Two values of tau_GABA by default:

    python examples/tau_gaba_trainability.py --out results/tau_gaba_example
    biosim protocol run tau_gaba                       # all ten conditions (survey tier)
"""

from _follow_up import parser, run

DEFAULT = ["tau_gaba_4_frozen", "tau_gaba_4_trainable", "tau_gaba_16_frozen", "tau_gaba_16_trainable"]

if __name__ == "__main__":
    run("tau_gaba", parser(__doc__, DEFAULT).parse_args())
