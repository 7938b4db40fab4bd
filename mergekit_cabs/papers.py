"""The papers the methods follow: what the model card links to and cites (host-free)."""

from __future__ import annotations

from dataclasses import dataclass

CABS_URL = "https://arxiv.org/abs/2503.01874"


@dataclass(frozen=True)
class Paper:
    """A paper the card links to and cites."""

    label: str
    title: str
    authors: str
    venue: str
    url: str
    bibtex: str

    @property
    def arxiv_id(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    def link(self) -> str:
        return f"[{self.title}]({self.url}) ({self.authors}, {self.venue}, arXiv:{self.arxiv_id})"


CABS_PAPER = Paper(
    label="CABS",
    title="CABS: Conflict-Aware and Balanced Sparsification for Enhancing Model Merging",
    authors="Yang et al.",
    venue="ICML 2025",
    url=CABS_URL,
    bibtex="""@inproceedings{yang2025cabs,
  title     = {{CABS}: Conflict-Aware and Balanced Sparsification for Enhancing Model Merging},
  author    = {Yang, Zongzhen and Qi, Binhang and Sun, Hailong and Long, Wenrui and Zhao, Ruobing and Gao, Xiang},
  booktitle = {Proceedings of the 42nd International Conference on Machine Learning},
  series    = {Proceedings of Machine Learning Research},
  volume    = {267},
  pages     = {70973--70999},
  year      = {2025},
  eprint    = {2503.01874},
  archivePrefix = {arXiv}
}""",
)

TIES_PAPER = Paper(
    label="TIES-Merging",
    title="TIES-Merging: Resolving Interference When Merging Models",
    authors="Yadav et al.",
    venue="NeurIPS 2023",
    url="https://arxiv.org/abs/2306.01708",
    bibtex="""@inproceedings{yadav2023ties,
  title     = {{TIES}-Merging: Resolving Interference When Merging Models},
  author    = {Yadav, Prateek and Tam, Derek and Choshen, Leshem and Raffel, Colin and Bansal, Mohit},
  booktitle = {Advances in Neural Information Processing Systems},
  volume    = {36},
  year      = {2023},
  eprint    = {2306.01708},
  archivePrefix = {arXiv}
}""",
)

DARE_PAPER = Paper(
    label="DARE",
    title="Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free Lunch",
    authors="Yu et al.",
    venue="ICML 2024",
    url="https://arxiv.org/abs/2311.03099",
    bibtex="""@inproceedings{yu2024dare,
  title     = {Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free Lunch},
  author    = {Yu, Le and Yu, Bowen and Yu, Haiyang and Huang, Fei and Li, Yongbin},
  booktitle = {Proceedings of the 41st International Conference on Machine Learning},
  series    = {Proceedings of Machine Learning Research},
  volume    = {235},
  year      = {2024},
  eprint    = {2311.03099},
  archivePrefix = {arXiv}
}""",
)
