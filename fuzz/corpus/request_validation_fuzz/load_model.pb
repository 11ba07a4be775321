
stories260K-int4_clip-g32