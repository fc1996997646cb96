#!/usr/bin/env python3
"""Nexmark q0..q8 on Apache Flink (PyFlink Table API / SQL, local mini-cluster),
the peer for Tributary's Nexmark benchmark.

    flink_nexmark.py --query q5 --input /tmp/nexmark-events.jsonl [--parallelism N]

The events file (JSON lines from `examples/nexmark --dump FILE` or
make_sample.py) is read with the `filesystem` connector and the `json` format
into one table `events`; the views `person`, `auction`, `bid` give the Nexmark
Flink column names (dateTime, ...), so the queries are the Nexmark repository's
q0..q8.sql (nexmark-flink/src/main/resources/queries) with their `blackhole`
sinks. Event time: `dateTime = TO_TIMESTAMP_LTZ(date_time, 3)` with
`WATERMARK FOR dateTime AS dateTime - INTERVAL '4' SECOND`.

Prints one final line:

    events/s=<float> events=<n> results=-1 seconds=<float> startup_seconds=<float> job_seconds=<float>

* startup_seconds: starting the JVM (py4j gateway) and creating the
  TableEnvironment, with the tables registered.
* seconds: wall clock from submitting the INSERT to the job's end
  (planning, the per-job local mini-cluster's start, the job).
  The job's own net runtime (JobExecutionResult) goes to stderr.
* job_seconds: the job's net runtime as Flink reports it (JobExecutionResult;
  from the job's start in the mini-cluster to its end).
* events: lines of the input file (counted before the job, not timed).
* results: -1, as blackhole does not count; --collect runs the query's
  SELECT into Python instead and counts the changelog rows it receives (for
  checking, not timing; --results-out FILE writes them).

q6: the standard q6.sql (an OVER window over the updating winning-bid
ranking) is rejected by Flink's planner; `--query q6` reports that and exits
with status 3. `--query q6_topn` runs the Tributary definition of q6 (average
of the winning prices of each seller's last 10 auctions by (expires, id),
updating) written with a Top-N.

Table settings: the Nexmark repository's (mini-batch on, 2 s / 50000 rows,
distinct-agg split); --no-mini-batch leaves them out.

--parallelism N > 1: the file is first split round-robin into N files in a
temporary directory (not timed) so the source reads N splits in parallel; a
single JSON-lines file is one split in Flink's file source.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

QUERIES = [f"q{i}" for i in range(9)] + ["q6_topn"]

SOURCE_DDL = """
CREATE TABLE events (
    `type` STRING,
    id BIGINT,
    name STRING,
    email_address STRING,
    credit_card STRING,
    city STRING,
    state STRING,
    item_name STRING,
    description STRING,
    initial_bid BIGINT,
    reserve BIGINT,
    expires BIGINT,
    seller BIGINT,
    category BIGINT,
    auction BIGINT,
    bidder BIGINT,
    price BIGINT,
    channel STRING,
    url STRING,
    date_time BIGINT,
    extra STRING,
    `dateTime` AS TO_TIMESTAMP_LTZ(date_time, 3),
    WATERMARK FOR `dateTime` AS `dateTime` - INTERVAL '4' SECOND
) WITH (
    'connector' = 'filesystem',
    'path' = '{path}',
    'format' = 'json',
    'json.fail-on-missing-field' = 'false',
    'json.ignore-parse-errors' = 'false'
)
"""

VIEWS = [
    """CREATE VIEW person AS SELECT id, name, email_address AS emailAddress,
    credit_card AS creditCard, city, state, `dateTime`, extra
    FROM events WHERE `type` = 'person'""",
    """CREATE VIEW auction AS SELECT id, item_name AS itemName, description,
    initial_bid AS initialBid, reserve, `dateTime`,
    TO_TIMESTAMP_LTZ(expires, 3) AS expires, seller, category, extra
    FROM events WHERE `type` = 'auction'""",
    """CREATE VIEW bid AS SELECT auction, bidder, price, channel, url, `dateTime`, extra
    FROM events WHERE `type` = 'bid'""",
]

# (sink columns, SELECT) per query; the SELECTs are the Nexmark repository's.
QUERY_SQL = {
    "q0": (
        "auction BIGINT, bidder BIGINT, price BIGINT, `dateTime` TIMESTAMP_LTZ(3), extra VARCHAR",
        "SELECT auction, bidder, price, `dateTime`, extra FROM bid",
    ),
    "q1": (
        "auction BIGINT, bidder BIGINT, price DECIMAL(23, 3), `dateTime` TIMESTAMP_LTZ(3), extra VARCHAR",
        "SELECT auction, bidder, 0.908 * price AS price, `dateTime`, extra FROM bid",
    ),
    "q2": (
        "auction BIGINT, price BIGINT",
        "SELECT auction, price FROM bid WHERE MOD(auction, 123) = 0",
    ),
    # The state literals in both cases: the `nexmark` crate behind
    # examples/nexmark writes states in lower case, the SQL compares upper case.
    "q3": (
        "name VARCHAR, city VARCHAR, state VARCHAR, id BIGINT",
        """SELECT P.name, P.city, P.state, A.id
        FROM auction AS A INNER JOIN person AS P ON A.seller = P.id
        WHERE A.category = 10 AND (P.state = 'OR' OR P.state = 'ID' OR P.state = 'CA'
            OR P.state = 'or' OR P.state = 'id' OR P.state = 'ca')""",
    ),
    "q4": (
        "id BIGINT, final BIGINT",
        """SELECT Q.category, AVG(Q.final)
        FROM (
            SELECT MAX(B.price) AS final, A.category
            FROM auction A, bid B
            WHERE A.id = B.auction AND B.`dateTime` BETWEEN A.`dateTime` AND A.expires
            GROUP BY A.id, A.category
        ) Q
        GROUP BY Q.category""",
    ),
    "q5": (
        "auction BIGINT, num BIGINT",
        """SELECT AuctionBids.auction, AuctionBids.num
        FROM (
            SELECT auction, count(*) AS num, window_start AS starttime, window_end AS endtime
            FROM TABLE(HOP(TABLE bid, DESCRIPTOR(`dateTime`), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
            GROUP BY auction, window_start, window_end
        ) AS AuctionBids
        JOIN (
            SELECT max(CountBids.num) AS maxn, CountBids.starttime, CountBids.endtime
            FROM (
                SELECT count(*) AS num, window_start AS starttime, window_end AS endtime
                FROM TABLE(HOP(TABLE bid, DESCRIPTOR(`dateTime`), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
                GROUP BY auction, window_start, window_end
            ) AS CountBids
            GROUP BY CountBids.starttime, CountBids.endtime
        ) AS MaxBids
        ON AuctionBids.starttime = MaxBids.starttime AND
           AuctionBids.endtime = MaxBids.endtime AND
           AuctionBids.num >= MaxBids.maxn""",
    ),
    # The repository's q6.sql (it notes Flink does not support it: the OVER
    # window cannot consume the ranking's retractions).
    "q6": (
        "seller BIGINT, avg_price BIGINT",
        """SELECT Q.seller,
            AVG(Q.price) OVER (PARTITION BY Q.seller ORDER BY Q.`dateTime`
                               ROWS BETWEEN 10 PRECEDING AND CURRENT ROW)
        FROM (
            SELECT *, ROW_NUMBER() OVER (PARTITION BY id, seller ORDER BY price DESC) AS rownum
            FROM (SELECT A.id, A.seller, B.price, B.`dateTime`
                  FROM auction AS A, bid AS B
                  WHERE A.id = B.auction AND B.`dateTime` BETWEEN A.`dateTime` AND A.expires)
        ) AS Q
        WHERE rownum <= 1""",
    ),
    # Tributary's q6 (nexmark/src/queries.rs): per seller, the average of the
    # winning prices of its last 10 auctions ordered by (expires, id).
    "q6_topn": (
        "seller BIGINT, avg_price BIGINT",
        """SELECT seller, AVG(final)
        FROM (
            SELECT seller, final,
                ROW_NUMBER() OVER (PARTITION BY seller ORDER BY expires DESC, id DESC) AS rownum
            FROM (
                SELECT A.id, A.seller, A.expires, MAX(B.price) AS final
                FROM auction A, bid B
                WHERE A.id = B.auction AND B.`dateTime` BETWEEN A.`dateTime` AND A.expires
                GROUP BY A.id, A.seller, A.expires
            )
        )
        WHERE rownum <= 10
        GROUP BY seller""",
    ),
    "q7": (
        "auction BIGINT, bidder BIGINT, price BIGINT, `dateTime` TIMESTAMP_LTZ(3), extra VARCHAR",
        """SELECT B.auction, B.bidder, B.price, B.`dateTime`, B.extra
        FROM bid B
        JOIN (
            SELECT MAX(price) AS maxprice, window_end AS `dateTime`
            FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(`dateTime`), INTERVAL '10' SECOND))
            GROUP BY window_start, window_end
        ) B1
        ON B.price = B1.maxprice
        WHERE B.`dateTime` BETWEEN B1.`dateTime` - INTERVAL '10' SECOND AND B1.`dateTime`""",
    ),
    "q8": (
        "id BIGINT, name VARCHAR, stime TIMESTAMP(3)",
        """SELECT P.id, P.name, P.starttime
        FROM (
            SELECT id, name, window_start AS starttime, window_end AS endtime
            FROM TABLE(TUMBLE(TABLE person, DESCRIPTOR(`dateTime`), INTERVAL '10' SECOND))
            GROUP BY id, name, window_start, window_end
        ) P
        JOIN (
            SELECT seller, window_start AS starttime, window_end AS endtime
            FROM TABLE(TUMBLE(TABLE auction, DESCRIPTOR(`dateTime`), INTERVAL '10' SECOND))
            GROUP BY seller, window_start, window_end
        ) A
        ON P.id = A.seller AND P.starttime = A.starttime AND P.endtime = A.endtime""",
    ),
}


# --collect cannot move TIMESTAMP_LTZ values into Python (PyFlink's pickler
# fails on java.time.Instant): those queries' rows are cast for collecting.
_TS_ROW = "SELECT auction, bidder, price, CAST(`dateTime` AS STRING) AS dt, extra FROM ({})"
COLLECT_WRAP = {"q0": _TS_ROW, "q1": _TS_ROW, "q7": _TS_ROW}


def count_lines(path):
    n = 0
    with open(path, "rb") as f:
        while True:
            buf = f.read(1 << 24)
            if not buf:
                return n
            n += buf.count(b"\n")


def split_input(path, parts):
    """Round-robin lines into `parts` files (each stays in event-time order)."""
    d = tempfile.mkdtemp(prefix="nexmark-flink-")
    outs = [open(os.path.join(d, f"part-{i}.json"), "w") for i in range(parts)]
    with open(path) as f:
        for i, line in enumerate(f):
            outs[i % parts].write(line)
    for o in outs:
        o.close()
    return d


def jvm_cpu_seconds():
    """CPU time of the gateway JVM (it runs the mini-cluster), from /proc."""
    try:
        from pyflink.java_gateway import get_gateway

        pid = get_gateway().jvm.java.lang.ProcessHandle.current().pid()
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except Exception:  # noqa: BLE001 - only a diagnostic
        return float("nan")


def find_java_home():
    if os.environ.get("JAVA_HOME"):
        return
    for j in ("/usr/lib/jvm/java-17-openjdk-amd64", "/usr/lib/jvm/java-11-openjdk-amd64",
              "/usr/lib/jvm/default-java"):
        if os.path.exists(os.path.join(j, "bin", "java")):
            os.environ["JAVA_HOME"] = j
            return


def main():
    ap = argparse.ArgumentParser(description="Nexmark on PyFlink (Table API / SQL)")
    ap.add_argument("--query", required=True, choices=QUERIES)
    ap.add_argument("--input", required=True)
    ap.add_argument("--parallelism", type=int, default=1)
    ap.add_argument("--collect", action="store_true",
                    help="collect the results into Python and count them (checking, not timing)")
    ap.add_argument("--results-out", metavar="FILE",
                    help="with --collect: write the changelog rows as JSON lines [kind, [fields]]")
    ap.add_argument("--no-mini-batch", action="store_true",
                    help="leave out the Nexmark repository's mini-batch settings (2 s, 50000 rows)")
    ap.add_argument("--explain", action="store_true", help="print the plan to stderr and exit")
    args = ap.parse_args()
    if not os.path.isfile(args.input):
        raise SystemExit(f"no such file: {args.input}")
    find_java_home()

    events = count_lines(args.input)
    src = os.path.abspath(args.input)
    tmpdir = None
    if args.parallelism > 1:
        tmpdir = split_input(src, args.parallelism)
        src = tmpdir

    try:
        t0 = time.perf_counter()
        from pyflink.table import EnvironmentSettings, TableEnvironment

        t_env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
        conf = t_env.get_config()
        conf.set("parallelism.default", str(args.parallelism))
        conf.set("table.local-time-zone", "UTC")
        conf.set("pipeline.name", f"nexmark-{args.query}")
        if not args.no_mini_batch:
            # The Nexmark repository's SQL client settings (conf/sql-client-defaults.yaml).
            conf.set("table.exec.mini-batch.enabled", "true")
            conf.set("table.exec.mini-batch.allow-latency", "2s")
            conf.set("table.exec.mini-batch.size", "50000")
            conf.set("table.optimizer.distinct-agg.split.enabled", "true")
        t_env.execute_sql(SOURCE_DDL.format(path=src))
        for v in VIEWS:
            t_env.execute_sql(v)
        columns, select = QUERY_SQL[args.query]
        sink = f"nexmark_{args.query}"
        t_env.execute_sql(f"CREATE TABLE {sink} ({columns}) WITH ('connector' = 'blackhole')")
        startup = time.perf_counter() - t0

        insert = f"INSERT INTO {sink} {select}"
        if args.explain:
            print(t_env.explain_sql(insert), file=sys.stderr)
            return

        results = -1
        net = None
        t1 = time.perf_counter()
        try:
            if args.collect:
                results = 0
                out = open(args.results_out, "w") if args.results_out else None
                with t_env.execute_sql(COLLECT_WRAP.get(args.query, "{}").format(select)).collect() as rows:
                    for row in rows:
                        results += 1
                        if out:
                            out.write(json.dumps([row.get_row_kind().name, list(row)], default=str))
                            out.write("\n")
                if out:
                    out.close()
            else:
                res = t_env.execute_sql(insert)
                client = res.get_job_client()
                res.wait()
                try:
                    net = client.get_job_execution_result().result().get_net_runtime() / 1000.0
                except Exception:  # noqa: BLE001 - only a diagnostic
                    net = None
        except Exception as e:  # noqa: BLE001
            msg = str(e)
            if args.query == "q6":
                first = next((ln for ln in msg.splitlines() if "Exception" in ln), msg[:300])
                print(f"flink q6: unsupported by Flink's planner: {first.strip()}", file=sys.stderr)
                print(f"flink q6: jvm_cpu_seconds={jvm_cpu_seconds():.2f}", file=sys.stderr)
                print(f"events/s=0 events={events} results=-1 seconds=0 "
                      f"startup_seconds={startup:.3f} unsupported=1", flush=True)
                sys.exit(3)
            raise
        seconds = time.perf_counter() - t1
    finally:
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)

    print(f"flink {args.query}: jvm_cpu_seconds={jvm_cpu_seconds():.2f}", file=sys.stderr)
    print(f"flink {args.query}: parallelism={args.parallelism} "
          f"job_net_runtime_seconds={net if net is None else round(net, 3)}"
          f"{' (collect mode: timing includes moving rows to Python)' if args.collect else ''}",
          file=sys.stderr)
    job = f" job_seconds={net:.3f}" if net is not None else ""
    print(f"events/s={events / seconds:.1f} events={events} results={results} "
          f"seconds={seconds:.3f} startup_seconds={startup:.3f}{job}", flush=True)


if __name__ == "__main__":
    main()
