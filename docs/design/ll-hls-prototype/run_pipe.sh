#!/bin/sh
# encoder (like OBS): testsrc2 + sine -> x264 -g 30 + aac -> mpegts on stdout
# remuxer (like the ingest): mpegts -> -c copy fMP4 with 200 ms fragments on stdout
# reader: boxes.py prints each top-level box with its arrival time
FF=/work/main/.venv/lib/python3.11/site-packages/imageio_ffmpeg/binaries/ffmpeg-linux-x86_64-v9.0.2
DUR=${DUR:-6}
FRAG=${FRAG:-200000}
FLAGS=${FLAGS:-empty_moov+default_base_moof+frag_keyframe}
G=${G:-30}
nice -n 10 $FF -hide_banner -loglevel error -re -f lavfi -i testsrc2=size=640x360:rate=30 -f lavfi -i sine=frequency=440:sample_rate=48000 \
  -t $DUR -c:v libx264 -preset ultrafast -tune zerolatency -g $G -pix_fmt yuv420p -c:a aac -b:a 96k -f mpegts pipe:1 |
nice -n 10 $FF -hide_banner -loglevel warning -analyzeduration 500000 -f mpegts -i pipe:0 -map 0 -c copy -bsf:a aac_adtstoasc \
  -f mp4 -movflags $FLAGS -frag_duration $FRAG pipe:1 |
/work/main/.venv/bin/python boxes.py
