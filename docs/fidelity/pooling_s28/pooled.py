"""A harness setting with its own pooling kernel (the kernel is a compression parameter: set_compression
takes it with the method and ratio)."""
import dataclasses

from pyuncomp.eval.runner import Setting


@dataclasses.dataclass(frozen=True)
class PooledSetting(Setting):
    pool_kernel: int = 7

    @property
    def name(self) -> str:
        return super().name if self.method == "full" else f"{super().name} k{self.pool_kernel}"

    def config(self) -> dict:
        return {**super().config(), "pool_kernel": self.pool_kernel}
