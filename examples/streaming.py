"""Streaming digits: four digits back to back in one trial, no reset between them.

Each digit has its own readout window (the readout potential averaged over
its 200 ms presentation, biosim.streams); the loss is the mean cross-entropy
over the windows. The loop is frozen in one condition and trainable in the
other. Brian2 runs the same streams (same input spikes, same initial
potentials at each stream's start), so the validation compares per-digit
accuracy and float64 spike trains like for like. Prints the table and, per
run, Brian2's accuracy at each position in a stream:

    python examples/streaming.py --out results/streaming_example
    biosim protocol run streaming                      # the same (study tier, seeds 42 43 44)
"""

from _follow_up import parser, run

from protocols.results import load_runs

DEFAULT = ["stream_frozen", "stream_trainable"]

if __name__ == "__main__":
    out = run("streaming", parser(__doc__, DEFAULT).parse_args())
    print("accuracy by position in a stream (Brian2, test digits):")
    for record in load_runs(out):
        simulators = (record.status.get("validation") or {}).get("simulators", {})
        brian = next((v for k, v in simulators.items() if k.startswith("brian2:")), None)
        if brian is None:
            print(f"  {record.spec.run_id}: {record.status.get('status')}, not validated")
            continue
        positions = "  ".join(f"{100 * a:5.1f} %" for a in brian["accuracy_by_position"])
        print(f"  {record.spec.run_id:<28} {positions}   (all digits {100 * brian['accuracy']:.1f} %)")
