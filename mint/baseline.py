"""Baselines at matched size: uniform round-to-nearest, written as an ordinary allocation.

Uniform RTN puts every quantizable unit (embedding, head, routers, attention, experts, ...) at one
(bits, group size); norms, biases and other 1-D tensors stay 16-bit, exactly as the method keeps them,
and a unit whose input dimension the group does not divide stays 16-bit (said in the result's
`notes`). The result has the same format as `mint allocate`'s, so the same exporter writes it and the
sizes are comparable byte for byte.
"""

import argparse
import sys

from mint import allocate as alloc
from mint import quantizer


def uniform_allocation(units, bits, group_size):
    """Every quantizable unit at (bits, group_size); an allocation dict like `allocate.allocate`'s."""
    quantizer.check_config(bits, group_size)
    alloc.check_units(units)
    target = (units["bits"] == bits) & (units["group_size"] == group_size)
    full = units["bits"] == 16
    menu = units[target | full]
    # Each unit's bytes at the target config, or 16-bit where the group does not fit it.
    sizes = menu.sort_values("bits").groupby("unit", sort=False)["bytes"].first()
    quantizable = set(units.loc[~full, "unit"])
    stuck = sorted(quantizable - set(units.loc[target, "unit"]))
    # At exactly that many bytes, the only feasible choice is the target everywhere it exists (16-bit
    # costs more), so the exact solver returns the uniform allocation in the common format. A
    # uniform baseline applies no SQNR veto.
    result = alloc.allocate(menu, int(sizes.sum()), solver="exact", sqnr_floor_db=0.0)
    result.update(solver="uniform", budget=f"uniform-{bits}bit-g{group_size}",
                  notes=[f"{u}: group {group_size} does not divide its input dimension; kept 16-bit"
                         for u in stuck])
    return result


def main(argv=None):
    p = argparse.ArgumentParser(prog="mint baseline", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="kind", required=True)
    uni = sub.add_parser("uniform", help="every quantizable unit at one (bits, group size)")
    uni.add_argument("--units", required=True, nargs="+", help="units.parquet from `mint experts`")
    uni.add_argument("--bits", type=int, required=True, choices=quantizer.BITS)
    uni.add_argument("--group-size", type=int, required=True, choices=quantizer.GROUP_SIZES)
    uni.add_argument("--out", required=True, help="allocation JSON to write")
    args = p.parse_args(argv)
    try:
        units = alloc.load_units(args.units)
        result = uniform_allocation(units, args.bits, args.group_size)
    except (ValueError, FileNotFoundError) as e:
        print(f"mint baseline: error: {e}", file=sys.stderr)
        return 2
    alloc.write_allocation(result, args.out)
    print(alloc.summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
