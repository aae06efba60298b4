"""The data sets the builders know, with the paper's settings (docs/protocol.md sections 1, 2 and 4).

Each entry says which raw layout its file has, the k-core minimums, the maximum context length ``L``, where the
official file lives, and how to cite and licence it. ``sasrec`` and the MovieLens sets are not in the paper; they
use the Amazon settings (user minimum 5, item minimum 5, ``L`` = 50). ``csv`` and ``parquet`` are for your own
(user, item, time) files, with the same defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UnknownDatasetError

__all__ = ["DEFAULT_RATIOS", "DATASETS", "DatasetSpec", "get_dataset_spec"]

#: The two split ratios the paper reports: 3:2:5 (Table 2-3) and 6:2:2 (Table 4).
DEFAULT_RATIOS: tuple[tuple[float, float, float], ...] = ((0.3, 0.2, 0.5), (0.6, 0.2, 0.2))

_CITE_MCAULEY = """@inproceedings{mcauley2015image,
  title = {Image-Based Recommendations on Styles and Substitutes},
  author = {McAuley, Julian and Targett, Christopher and Shi, Qinfeng and van den Hengel, Anton},
  booktitle = {Proceedings of the 38th International ACM SIGIR Conference},
  year = {2015}
}"""
_CITE_MOVIELENS = """@article{harper2015movielens,
  title = {The MovieLens Datasets: History and Context},
  author = {Harper, F. Maxwell and Konstan, Joseph A.},
  journal = {ACM Transactions on Interactive Intelligent Systems},
  volume = {5}, number = {4}, year = {2015}
}"""
_LICENCE_MOVIELENS = (
    "MovieLens (GroupLens Research): free for research use, but the data may not be redistributed without "
    "GroupLens's permission; keep a dataset built from it private."
)


@dataclass(frozen=True)
class DatasetSpec:
    """One data set: its raw layout and the settings the paper's pipeline used for it.

    Attributes:
        name: The registry name (``--dataset``).
        layout: The raw layout its reader expects (see :data:`dataset_builders.readers.LAYOUTS`).
        pretty_name: A human-readable name for the dataset card.
        user_min: The k-core user minimum ``U`` (PROTOCOL 2).
        item_min: The k-core item minimum (PROTOCOL 2).
        max_length: The maximum context length ``L`` (PROTOCOL 4).
        url: The official download address (``None`` if it has to be fetched by hand).
        filename: The raw file's usual name.
        archive_member: For a ``.zip`` download, the member that holds the interactions.
        homepage: Where the data set is described.
        description: One paragraph for the dataset card.
        citation: BibTeX to cite the data.
        licence: The licence note for the dataset card.
        redistributable: Whether a dataset built from it may be published openly (``False``: only to a private
            repository; ``build_dataset.py --push_to_hub`` then requires ``--private``).
    """

    name: str
    layout: str
    pretty_name: str
    user_min: int = 5
    item_min: int = 5
    max_length: int = 50
    url: str | None = None
    filename: str | None = None
    archive_member: str | None = None
    homepage: str | None = None
    description: str = ""
    citation: str = ""
    licence: str = ""
    redistributable: bool = True


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="gowalla",
            layout="gowalla",
            pretty_name="Gowalla check-ins",
            user_min=20,
            max_length=100,
            url="https://snap.stanford.edu/data/loc-gowalla_totalCheckins.txt.gz",
            filename="loc-gowalla_totalCheckins.txt.gz",
            homepage="https://snap.stanford.edu/data/loc-gowalla.html",
            description="Location check-ins of the Gowalla social network (Feb 2009 - Oct 2010), from SNAP. "
            "The item is the location id, the time the check-in time.",
            citation="""@inproceedings{cho2011friendship,
  title = {Friendship and Mobility: User Movement in Location-Based Social Networks},
  author = {Cho, Eunjoon and Myers, Seth A. and Leskovec, Jure},
  booktitle = {Proceedings of the 17th ACM SIGKDD International Conference},
  year = {2011}
}""",
            licence="Stanford SNAP data, distributed for research; cite Cho et al. (KDD 2011).",
        ),
        DatasetSpec(
            name="twitch-100k",
            layout="twitch-100k",
            pretty_name="Twitch-100k",
            user_min=15,
            max_length=70,
            url=None,  # a Google Drive folder: https://github.com/JRappaz/liverec
            filename="100k_a.csv",
            homepage="https://github.com/JRappaz/liverec",
            description="100,000 Twitch users and the streams they watched over 43 days (Rappaz et al., "
            "RecSys 2021). The item is the stream id, the time the 10-minute step the user was first seen.",
            citation="""@inproceedings{rappaz2021recommendation,
  title = {Recommendation on Live-Streaming Platforms: Dynamic Availability and Repeat Consumption},
  author = {Rappaz, J{\\'e}r{\\'e}mie and McAuley, Julian and Aberer, Karl},
  booktitle = {Proceedings of the 15th ACM Conference on Recommender Systems},
  year = {2021}
}""",
            licence="Released by Rappaz, McAuley and Aberer for research; cite their RecSys 2021 paper.",
        ),
        DatasetSpec(
            name="amazon-video-games",
            layout="amazon-ratings",
            pretty_name="Amazon video games",
            url="http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/ratings_Video_Games.csv",
            filename="ratings_Video_Games.csv",
            homepage="https://cseweb.ucsd.edu/~jmcauley/datasets/amazon/links.html",
            description="Ratings of video games on Amazon (McAuley et al. 2015), the ratings-only file; every "
            "rating is an interaction, at its Unix time.",
            citation=_CITE_MCAULEY,
            licence="Amazon review data, for research use only; cite McAuley et al. (SIGIR 2015).",
        ),
        DatasetSpec(
            name="sasrec",
            layout="sasrec",
            pretty_name="SASRec-preprocessed interactions",
            url="https://raw.githubusercontent.com/kang205/SASRec/master/data/Video.txt",
            filename="Video.txt",
            homepage="https://github.com/kang205/SASRec",
            description="A file preprocessed by the SASRec authors (Kang and McAuley, ICDM 2018): one "
            "`user item` pair per line, each user's lines in time order, no time column (the download is the "
            "5-core Amazon video games file, Video.txt).",
            citation=_CITE_MCAULEY
            + """
@inproceedings{kang2018self,
  title = {Self-Attentive Sequential Recommendation},
  author = {Kang, Wang-Cheng and McAuley, Julian},
  booktitle = {2018 IEEE International Conference on Data Mining (ICDM)},
  year = {2018}
}""",
            licence="Amazon review data, for research use only; cite McAuley et al. (SIGIR 2015).",
        ),
        DatasetSpec(
            name="movielens-100k",
            layout="movielens",
            pretty_name="MovieLens 100K",
            url="https://files.grouplens.org/datasets/movielens/ml-100k.zip",
            filename="u.data",
            archive_member="ml-100k/u.data",
            homepage="https://grouplens.org/datasets/movielens/100k/",
            description="100,000 movie ratings of 943 users (GroupLens); every rating is an interaction.",
            citation=_CITE_MOVIELENS,
            licence=_LICENCE_MOVIELENS,
            redistributable=False,
        ),
        DatasetSpec(
            name="movielens-1m",
            layout="movielens",
            pretty_name="MovieLens 1M",
            url="https://files.grouplens.org/datasets/movielens/ml-1m.zip",
            filename="ratings.dat",
            archive_member="ml-1m/ratings.dat",
            homepage="https://grouplens.org/datasets/movielens/1m/",
            description="1,000,209 movie ratings of 6,040 users (GroupLens); every rating is an interaction.",
            citation=_CITE_MOVIELENS,
            licence=_LICENCE_MOVIELENS,
            redistributable=False,
        ),
        DatasetSpec(
            name="csv",
            layout="csv",
            pretty_name="Custom interactions (CSV)",
            description="A CSV file of (user, item, time) interactions with a header row.",
        ),
        DatasetSpec(
            name="parquet",
            layout="parquet",
            pretty_name="Custom interactions (Parquet)",
            description="A Parquet file of (user, item, time) interactions.",
        ),
    )
}


def get_dataset_spec(name: str) -> DatasetSpec:
    """Return the registry entry for ``name``; an unknown name raises an error that lists the choices."""
    try:
        return DATASETS[name]
    except KeyError:
        raise UnknownDatasetError(f"unknown data set {name!r}; choose one of: {', '.join(DATASETS)}") from None
