"""Writes the tour's models (docs/tour.md): PyTorch modules with hand-set weights, saved as
safetensors state_dicts exactly as a user would export theirs. Also prints what PyTorch
computes on the tour's inputs, to compare with seqflow's output in the doc.

    python3 models/tour/make.py        # needs torch and safetensors
"""
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).parent
torch.manual_seed(0)


def save(name, modules):
    sd = {}
    for prefix, m in modules.items():
        for k, v in m.state_dict().items():
            sd[f"{prefix}.{k}"] = v.detach().clone().contiguous()
    save_file(sd, HERE / f"{name}.safetensors")


def set_(param, values):
    with torch.no_grad():
        param.copy_(torch.tensor(values, dtype=torch.float32).reshape(param.shape))


# 1. A difference filter: y_t = x_t - x_{t-1} (causal: x_{-1} = 0).
conv = torch.nn.Conv1d(1, 1, kernel_size=2, bias=False)
set_(conv.weight, [-1.0, 1.0])
save("diff", {"conv": conv})
step = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1], dtype=torch.float32)
y = conv(torch.nn.functional.pad(step.view(1, 1, -1), (1, 0))).view(-1)
print("diff on the step:", y.tolist())
print("max-pooled by 2:", torch.nn.functional.max_pool1d(y.view(1, 1, -1), 2).view(-1).tolist())

# 2. The smallest RNN: h_t = tanh(1.0 x_t + 0.5 h_{t-1}).
rnn = torch.nn.RNN(1, 1)
set_(rnn.weight_ih_l0, [1.0])
set_(rnn.weight_hh_l0, [0.5])
set_(rnn.bias_ih_l0, [0.0])
set_(rnn.bias_hh_l0, [0.0])
save("rnn", {"rnn": rnn})
pulse = torch.tensor([1, 0, 0, 0, 0], dtype=torch.float32).view(-1, 1, 1)
print("rnn on the pulse:", rnn(pulse)[0].view(-1).tolist())

# 3. Bidirectional and deep bidirectional (PyTorch's default initialization, seed 0).
birnn = torch.nn.RNN(1, 1, bidirectional=True)
save("birnn", {"rnn": birnn})
deep = torch.nn.RNN(1, 1, num_layers=2, bidirectional=True)
save("deep_birnn", {"rnn": deep})
print("birnn on the pulse (last step):", birnn(pulse)[0][-1].view(-1).tolist())

# 4. An LSTM that remembers a pulse: the input gate opens on x = 1, the forget gate keeps the
# cell, the output gate mostly open. Rows of weight_ih are the gates i, f, g, o.
lstm = torch.nn.LSTM(1, 1)
set_(lstm.weight_ih_l0, [6.0, 0.0, 2.0, 0.0])
set_(lstm.weight_hh_l0, [0.0, 0.0, 0.0, 0.0])
set_(lstm.bias_ih_l0, [-3.0, 3.0, 0.0, 2.0])
set_(lstm.bias_hh_l0, [0.0, 0.0, 0.0, 0.0])
save("lstm", {"lstm": lstm})
print("lstm on the pulse:", lstm(pulse)[0].view(-1).tolist())

# 5. The gate identity: f = 0, i = 1, o = 1 by saturated biases (+-20), the candidate g with
# the RNN's W, U, b; next to it an RNN with the same W, U, b followed by tanh. With U = 0 the
# two agree; with U != 0 they do not (the LSTM feeds back tanh(c), the RNN its h).
for suffix, u in (("", 0.5), ("_u0", 0.0)):
    l = torch.nn.LSTM(1, 1)
    set_(l.weight_ih_l0, [0.0, 0.0, 0.8, 0.0])
    set_(l.weight_hh_l0, [0.0, 0.0, u, 0.0])
    set_(l.bias_ih_l0, [20.0, -20.0, 0.1, 20.0])
    set_(l.bias_hh_l0, [0.0, 0.0, 0.0, 0.0])
    save(f"lstm_as_rnn{suffix}", {"lstm": l})
    r = torch.nn.RNN(1, 1)
    set_(r.weight_ih_l0, [0.8])
    set_(r.weight_hh_l0, [u])
    set_(r.bias_ih_l0, [0.1])
    set_(r.bias_hh_l0, [0.0])
    save(f"rnn_tanh{suffix}", {"rnn": r})
    x = torch.tensor([1, 0, 0, 0, 0], dtype=torch.float32).view(-1, 1, 1)
    print(f"U = {u}: lstm h", l(x)[0].view(-1).tolist())
    print(f"U = {u}: tanh(rnn h)", torch.tanh(r(x)[0]).view(-1).tolist())
