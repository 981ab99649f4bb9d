"""The README's Python session: pandas in, pyarrow out, one sensor's scores plotted to
docs/python_scores.png (needs matplotlib). Run from the repository root:

    python python/examples/readme_session.py
"""
import pandas as pd
import seqflow

df = pd.read_parquet("datasets/sample/sensors.parquet")
model = seqflow.Model("models/anomaly.toml")
features = ["temp", "vib_x", "vib_y", "current", "pressure", "humidity", "rpm", "power"]
norm = {"mean": [23.512972, 0.029818, 0.023851, 5.401987, 101.556943, 52.053648, 906.948803, 1.186656],
        "std": [6.330203, 0.019263, 0.015822, 2.369747, 0.164477, 4.851748, 611.559229, 0.551571]}
scores = model.predict(df, key="sensor_id", time="ts", features=features,
                       normalize=norm, nan="ffill", names=["score"])
print(scores.schema)
print(scores.num_rows)

s = model.session(key="sensor_id", time="ts", features=features,
                  normalize=norm, nan="ffill", names=["score"])
first = s.push(df.iloc[:20_000])
rest = s.push(df.iloc[20_000:])
print(first.num_rows + rest.num_rows, len(s.keys()), s.stats()["rejects"])
s.save("out/session")
again = seqflow.Session.load("out/session", model, workers=2)

import pyarrow.compute as pc
one = scores.filter(pc.equal(scores["sensor_id"], "site01-m00003")).to_pandas()
one["ts"] = pd.to_datetime(one["ts"], unit="ms")
ax = one.plot(x="ts", y="score", figsize=(8, 2.5), legend=False, title="site01-m00003")
ax.figure.savefig("docs/python_scores.png", dpi=80, bbox_inches="tight")
print(seqflow.run("pipelines/demo.toml", workers=2)["summary"])
