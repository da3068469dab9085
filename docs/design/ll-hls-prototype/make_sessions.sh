#!/bin/sh
# Two publisher sessions (new FFmpeg each, like a reconnect): A 640x360, B 640x360 again, C 1280x720
# (a reconnect with other encoder settings). Each cut into 1 s segments by cutter.py.
FF=/work/main/.venv/lib/python3.11/site-packages/imageio_ffmpeg/binaries/ffmpeg-linux-x86_64-v9.0.2
one() { # dir firstnum size dur
nice -n 10 $FF -hide_banner -loglevel error -f lavfi -i testsrc2=size=$3:rate=30 -f lavfi -i sine=frequency=440:sample_rate=48000 \
  -t $4 -c:v libx264 -preset ultrafast -g 30 -pix_fmt yuv420p -c:a aac -f mpegts pipe:1 |
nice -n 10 $FF -hide_banner -loglevel warning -f mpegts -i pipe:0 -map 0 -c copy -bsf:a aac_adtstoasc \
  -f mp4 -movflags empty_moov+default_base_moof+frag_keyframe+delay_moov -frag_duration 200000 pipe:1 |
/work/main/.venv/bin/python cutter.py $1 $2 1.0
}
rm -rf sessA sessB sessC
one sessA 0 640x360 4
one sessB 4 640x360 3
one sessC 7 1280x720 3
