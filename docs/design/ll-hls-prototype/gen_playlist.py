"""Throwaway: build an HLS playlist over sessA/B/C (index.json) in LL-HLS shape.

usage: gen_playlist.py [--endlist] [--no-parts] > x.m3u8  (URIs relative to this folder)
"""
import json, math, sys
sessions = ["sessA", "sessB", "sessC"]
endlist = "--endlist" in sys.argv
parts = "--no-parts" not in sys.argv
segs = []
for s in sessions:
    for i, seg in enumerate(json.load(open(f"{s}/index.json"))):
        segs.append((s, i == 0, seg))
target = max(math.ceil(seg["dur"]) for _, _, seg in segs)
lines = ["#EXTM3U", "#EXT-X-VERSION:9", f"#EXT-X-TARGETDURATION:{target}"]
if parts:
    lines += ["#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=0.666,CAN-SKIP-UNTIL=6", "#EXT-X-PART-INF:PART-TARGET=0.222"]
lines += [f"#EXT-X-MEDIA-SEQUENCE:{segs[0][2]['n']}", "#EXT-X-DISCONTINUITY-SEQUENCE:0"]
if endlist:
    lines.append("#EXT-X-PLAYLIST-TYPE:VOD")
for k, (s, first, seg) in enumerate(segs):
    if first:
        if k:
            lines.append("#EXT-X-DISCONTINUITY")
        lines.append(f'#EXT-X-MAP:URI="{s}/init.mp4"')
    if parts and k >= len(segs) - 2:
        for j, (d, ind) in enumerate(seg["parts"]):
            lines.append(f'#EXT-X-PART:DURATION={d:.5f},URI="{s}/part_{seg["n"]}_{j}.m4s"' + (",INDEPENDENT=YES" if ind else ""))
    lines.append(f"#EXTINF:{seg['dur']:.5f},")
    lines.append(f"{s}/seg_{seg['n']}.m4s")
if parts and not endlist:
    lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="sessC/part_{segs[-1][2]["n"]+1}_0.m4s"')
if endlist:
    lines.append("#EXT-X-ENDLIST")
print("\n".join(lines))
