"""pytorch/examples' MNIST program in our own words (issue #14): random digits in place of the download."""

import argparse
import os

import numpy as np
import pytest

import conch as torch
import conch.nn as nn
import conch.nn.functional as F
import conch.optim as optim
from conch.optim.lr_scheduler import StepLR
from conch.utils.data import Dataset

# ---------------------------------------------------------------------------------------------------------------
# the program: the calls mnist/main.py makes; a torchvision-like Dataset of random images stands in for MNIST
# ---------------------------------------------------------------------------------------------------------------


class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()  # noqa: UP008  (the example's spelling)
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = self.conv1(x)
        x = F.relu(x)
        x = self.conv2(x)
        x = F.relu(x)
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = self.fc1(x)
        x = F.relu(x)
        x = self.dropout2(x)
        x = self.fc2(x)
        output = F.log_softmax(x, dim=1)
        return output


class RandomDigits(Dataset):
    """MNIST's interface (``len``, ``(image, label)`` items, a ``transform``): uint8 28x28 noise with a bright
    3x3 square whose position is the label, so a CNN can learn it in a few steps."""

    def __init__(self, n, train=True, transform=None):
        rng = np.random.default_rng(0 if train else 1)
        self.targets = rng.integers(0, 10, size=n)
        self.data = rng.integers(0, 64, size=(n, 28, 28)).astype(np.uint8)
        for img, t in zip(self.data, self.targets):
            r, c = 4 + 8 * (t // 4), 3 + 6 * (t % 4)
            img[r : r + 3, c : c + 3] = 255
        self.transform = transform

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        img, target = self.data[index], int(self.targets[index])
        if self.transform is not None:
            img = self.transform(img)
        return img, target


def to_normalized_tensor(img, mean=0.1307, std=0.3081):
    """What ``transforms.Compose([ToTensor(), Normalize((0.1307,), (0.3081,))])`` does to one image."""
    x = torch.from_numpy(img).float().div(255).unsqueeze(0)
    return (x - mean) / std


def train(args, model, device, train_loader, optimizer, epoch, history):
    model.train()
    for batch_idx, (data, target) in enumerate(train_loader):
        data, target = data.to(device), target.to(device)
        optimizer.zero_grad()
        output = model(data)
        loss = F.nll_loss(output, target)
        loss.backward()
        optimizer.step()
        history.append(loss.item())
        if batch_idx % args.log_interval == 0:
            print(
                "Train Epoch: {} [{}/{} ({:.0f}%)]\tLoss: {:.6f}".format(  # noqa: UP032  (the example's spelling)
                    epoch,
                    batch_idx * len(data),
                    len(train_loader.dataset),
                    100.0 * batch_idx / len(train_loader),
                    loss.item(),
                )
            )
            if args.dry_run:
                break


def evaluate(model, device, test_loader):
    model.eval()
    test_loss = 0
    correct = 0
    with torch.no_grad():
        for data, target in test_loader:
            data, target = data.to(device), target.to(device)
            output = model(data)
            test_loss += F.nll_loss(output, target, reduction="sum").item()
            pred = output.argmax(dim=1, keepdim=True)
            correct += pred.eq(target.view_as(pred)).sum().item()
    test_loss /= len(test_loader.dataset)
    print(
        "\nTest set: Average loss: {:.4f}, Accuracy: {}/{} ({:.0f}%)\n".format(  # noqa: UP032
            test_loss, correct, len(test_loader.dataset), 100.0 * correct / len(test_loader.dataset)
        )
    )
    return test_loss, correct


def main(argv, out_dir):
    parser = argparse.ArgumentParser(description="MNIST-style example")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--test-batch-size", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1.0)
    parser.add_argument("--gamma", type=float, default=0.7)
    parser.add_argument("--no-accel", action="store_true")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--log-interval", type=int, default=2)
    parser.add_argument("--save-model", action="store_true")
    args = parser.parse_args(argv)

    use_accel = not args.no_accel and torch.accelerator.is_available()
    use_cuda = not args.no_accel and torch.cuda.is_available()
    use_mps = not args.no_accel and torch.backends.mps.is_available()
    torch.manual_seed(args.seed)
    if use_accel:
        device = torch.accelerator.current_accelerator()
    elif use_cuda:
        device = torch.device("cuda")
    elif use_mps:
        device = torch.device("mps")
    else:
        device = torch.device("cpu")

    train_kwargs = {"batch_size": args.batch_size}
    test_kwargs = {"batch_size": args.test_batch_size}
    if use_accel:
        accel_kwargs = {"num_workers": 1, "pin_memory": True, "shuffle": True}
        train_kwargs.update(accel_kwargs)
        test_kwargs.update(accel_kwargs)
    else:
        train_kwargs["shuffle"] = True

    dataset1 = RandomDigits(160, train=True, transform=to_normalized_tensor)
    dataset2 = RandomDigits(100, train=False, transform=to_normalized_tensor)
    train_loader = torch.utils.data.DataLoader(dataset1, **train_kwargs)
    test_loader = torch.utils.data.DataLoader(dataset2, **test_kwargs)

    model = Net().to(device)
    if hasattr(optim, "Adadelta"):
        optimizer = optim.Adadelta(model.parameters(), lr=args.lr)
    else:  # conch gained Adadelta in a parallel branch; until then the nearest adaptive rule
        optimizer = optim.Adam(model.parameters(), lr=args.lr * 1e-3)

    scheduler = StepLR(optimizer, step_size=1, gamma=args.gamma)
    history, tests = [], [evaluate(model, device, test_loader)]
    for epoch in range(1, args.epochs + 1):
        train(args, model, device, train_loader, optimizer, epoch, history)
        tests.append(evaluate(model, device, test_loader))
        scheduler.step()

    if args.save_model:
        torch.save(model.state_dict(), os.path.join(out_dir, "mnist_cnn.pt"))
    return model, optimizer, device, history, tests


# ---------------------------------------------------------------------------------------------------------------
# the checks
# ---------------------------------------------------------------------------------------------------------------


def test_net_shapes_and_log_probabilities():
    torch.manual_seed(0)
    model = Net()
    model.eval()
    x = torch.randn(3, 1, 28, 28)
    out = model(x)
    assert out.shape == (3, 10) and out.dtype == torch.float32
    np.testing.assert_allclose(out.exp().sum(dim=1).detach().numpy(), np.ones(3), rtol=1e-5)
    # the same forward in float64 NumPy for the layers after the convolutions
    h = F.max_pool2d(F.relu(model.conv2(F.relu(model.conv1(x)))), 2)
    assert h.shape == (3, 64, 12, 12) and torch.flatten(h, 1).shape == (3, 9216)
    a = h.detach().numpy().astype(np.float64).reshape(3, -1)
    w1, b1 = model.fc1.weight.detach().numpy().astype(np.float64), model.fc1.bias.detach().numpy()
    w2, b2 = model.fc2.weight.detach().numpy().astype(np.float64), model.fc2.bias.detach().numpy()
    z = np.maximum(a @ w1.T + b1, 0) @ w2.T + b2
    ref = z - z.max(1, keepdims=True)
    ref = ref - np.log(np.exp(ref).sum(1, keepdims=True))
    np.testing.assert_allclose(out.detach().numpy(), ref, rtol=1e-4, atol=1e-4)
    # the first convolution against a direct float64 sum
    x64, w, b = x.numpy().astype(np.float64), model.conv1.weight.detach().numpy(), model.conv1.bias.detach().numpy()
    c = np.zeros((3, 32, 26, 26))
    for i in range(3):
        for j in range(3):
            c += np.einsum("bhw,o->bohw", x64[:, 0, i : i + 26, j : j + 26], w[:, 0, i, j])
    np.testing.assert_allclose(model.conv1(x).detach().numpy(), c + b[None, :, None, None], rtol=1e-4, atol=1e-4)


def test_nll_loss_and_accuracy_counting():
    output = F.log_softmax(torch.tensor([[2.0, 0.5, 0.1], [0.1, 0.2, 3.0]]), dim=1)
    target = torch.tensor([0, 1])
    assert abs(F.nll_loss(output, target).item() - float(-(output[0, 0] + output[1, 1]) / 2)) < 1e-6
    assert abs(F.nll_loss(output, target, reduction="sum").item() - float(-(output[0, 0] + output[1, 1]))) < 1e-6
    pred = output.argmax(dim=1, keepdim=True)
    assert pred.shape == (2, 1) and pred.eq(target.view_as(pred)).sum().item() == 1


def test_main_trains_steps_lr_and_saves(tmp_path):
    model, optimizer, device, history, tests = main(["--epochs", "2", "--save-model"], tmp_path)
    assert str(device) == ("cuda" if torch.cuda.is_available() else "cpu")
    assert len(history) == 2 * 5  # 160 images in batches of 32, two epochs
    assert np.mean(history[-3:]) < 0.5 * history[0], history
    (loss0, correct0), (loss2, correct2) = tests[0], tests[-1]
    assert loss2 < 0.5 * loss0 and correct2 > max(correct0, 30)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(optimizer.param_groups[0]["initial_lr"] * 0.7**2)
    state_dict = torch.load(os.path.join(tmp_path, "mnist_cnn.pt"))
    assert set(state_dict) == {f"{m}.{p}" for m in ("conv1", "conv2", "fc1", "fc2") for p in ("weight", "bias")}
    fresh = Net()
    fresh.load_state_dict(state_dict)
    fresh.to(device).eval()
    model.eval()
    x = torch.randn(4, 1, 28, 28).to(device)
    with torch.no_grad():
        assert torch.allclose(fresh(x), model(x))


def test_dry_run_stops_after_the_first_log():
    _, _, _, history, _ = main(["--epochs", "1", "--dry-run"], None)
    assert len(history) == 1
