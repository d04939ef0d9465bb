"""Energy models built on e3md layers, and the trained potentials shipped with e3md."""
