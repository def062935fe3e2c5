"""Basin map: where does each start of the E-I loop end up when the loop trains?

Each condition starts W_EI and W_IE at a multiple of canonical (0, 0.25, 0.5,
1, 2) with both trainable; the figure ``figures/basin_map.png`` maps the final
I rate, gamma peak, W_EI pruning and accuracy over the grid, and draws where
each start went. Two corners and the canonical start by default:

    python examples/basin_map.py --out results/basin_example
    biosim protocol run basin_map                      # the whole 5 x 5 grid (survey tier)
"""

from _follow_up import parser, run

CORNERS = ["basin_init_w_ei_0__init_w_ie_0", "basin_init_w_ei_1__init_w_ie_1", "basin_init_w_ei_2__init_w_ie_2"]

if __name__ == "__main__":
    run("basin_map", parser(__doc__, CORNERS).parse_args())
