import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _cpu_threads():
    # CI machines have 2 cores; more threads than cores only adds contention.
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def student_and_tokenizer():
    from workbench.models import create_embedded_model

    torch.manual_seed(0)
    return create_embedded_model("embedded-vit-student")
