"""e3md evaluate: MAE and RMSE of a potential on reference data.

    e3md evaluate rmd17-ethanol ../shared/data/rmd17/rmd17_ethanol_train_01.npz
    e3md evaluate my.e3md data.xyz --energy-unit eV --json

Reports energy (per structure and per atom, meV), force components (meV/Å) and, where the data
have them, stress components (meV/Å³), as a table or JSON. Units of the data are declared:
rMD17 npz files are kcal/mol; extended XYZ defaults to eV (override with --energy-unit).
"""

import sys


def add_arguments(parser) -> None:
    parser.add_argument("potential", help="shipped potential name or path to an .e3md file")
    parser.add_argument("data", nargs="+", help="data file(s): .npz (rMD17) or .xyz/.extxyz")
    parser.add_argument("--format", choices=["extxyz", "rmd17"], help="data format")
    parser.add_argument(
        "--energy-unit",
        help="declared energy unit of the data (eV, "
        "kcal/mol, kJ/mol, meV, Hartree); forces per length unit",
    )
    parser.add_argument("--length-unit", default="Å", help="declared length unit (Å, nm, Bohr)")
    parser.add_argument("--stress-unit", help="declared stress unit (default energy/length^3)")
    parser.add_argument(
        "--index", default=":", help="frames of each file (ASE-style: :100, 5, -10:, ::2)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args) -> int:
    import json

    from e3md.data import concatenate, load_dataset
    from e3md.evaluate import evaluate, format_table, report

    try:
        from e3md.potentials import load

        pot = load(args.potential)
        data = concatenate(
            [
                load_dataset(
                    p,
                    format=args.format,
                    energy_unit=args.energy_unit,
                    length_unit=args.length_unit,
                    stress_unit=args.stress_unit,
                    species=pot.species,
                    index=args.index,
                    require_forces=False,
                )
                for p in args.data
            ]
        )
        m, _ = evaluate(pot, data, batch_size=args.batch_size)
    except (OSError, ValueError) as err:
        print(f"e3md evaluate: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(
            json.dumps(
                {"potential": str(args.potential), "data": list(args.data), **report(m)}, indent=1
            )
        )
    else:
        print(f"{args.potential} on {', '.join(args.data)}")
        print(format_table(m))
    return 0
